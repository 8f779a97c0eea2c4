"""Model architectures the project implements itself."""
