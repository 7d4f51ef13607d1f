from services.common.app import main
from services.notify.entrypoints.app import build

if __name__ == "__main__":
    main("notify", build)
