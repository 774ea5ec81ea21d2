"""``python -m diffclip_cli`` runs the command-line interface."""

from diffclip_cli.cli import main

if __name__ == "__main__":
    main()
