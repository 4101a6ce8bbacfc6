"""``python -m pet_recon`` runs the command-line interface."""

from pet_recon.cli import main

main()
