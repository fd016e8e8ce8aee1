"""`python -m jsa_retrieval ...` runs the jsar command line."""
from .cli import main

main()
