from services.common.app import main
from services.scheduling.entrypoints.app import build

if __name__ == "__main__":
    main("scheduling", build)
