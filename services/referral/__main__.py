from services.common.app import main
from services.referral.entrypoints.app import build
from services.referral.settings import ReferralSettings

if __name__ == "__main__":
    main("referral", build, configure=ReferralSettings.from_settings)
