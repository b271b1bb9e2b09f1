"""``python -m ktae.integrations.verl <verl overrides>``: see :mod:`ktae.integrations.verl.main`."""

from ktae.integrations.verl.main import main

if __name__ == "__main__":
    main()
