"""PET physics: geometry, projector, OSEM, phantoms, simulation."""
