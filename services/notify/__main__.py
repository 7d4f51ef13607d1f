from services.common.app import main
from services.notify.entrypoints.app import build
from services.notify.settings import NotifySettings

if __name__ == "__main__":
    main("notify", build, configure=NotifySettings.from_settings)
