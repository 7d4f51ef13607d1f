-- A WeChat subscription is to one template: a user accepts or rejects each in the
-- subscribe pop-up, may later reject one in the service-notification settings while keeping
-- the others, and WeChat answers 43101 for the template whose subscription is gone. So a
-- refusal is kept per (openid, template), not per patient, and a patient keeps WeChat for
-- the messages they still accept. Keyed by the openid: a patient's new openid is a new
-- subscriber with no refusals. The newest decision wins (WeChat may push a decision twice,
-- and a late push must not undo a newer one).
--
-- contacts.wechat_refused_at (one refusal for every template) is no longer written or read.
-- Its refusals cannot be carried over, the template being unknown: such a patient's next
-- message of each template is offered to WeChat once more, refused at once (43101) and sent
-- by SMS, and from then on that template goes straight to SMS. The column stays until no
-- replica of the previous release reads it.
CREATE TABLE wechat_template_choices (
    openid       text        NOT NULL,
    template_id  text        NOT NULL,
    accepted     boolean     NOT NULL,
    decided_at   timestamptz NOT NULL,
    PRIMARY KEY (openid, template_id)
);
