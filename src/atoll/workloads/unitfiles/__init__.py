"""Unit files and what is generated from them: Quadlet units, the services they
become, restart policies and socket units.  Nothing here runs a container."""
