from services.common.app import main
from services.scheduling.entrypoints.app import build
from services.scheduling.settings import SchedulerSettings

if __name__ == "__main__":
    main("scheduling", build, configure=SchedulerSettings.from_settings)
