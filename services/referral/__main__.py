from services.common.app import main
from services.referral.entrypoints.app import build

if __name__ == "__main__":
    main("referral", build)
