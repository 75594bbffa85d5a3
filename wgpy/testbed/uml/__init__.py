"""The ``kernel-uml`` peer: the kernel's WireGuard in a User-Mode Linux guest."""
