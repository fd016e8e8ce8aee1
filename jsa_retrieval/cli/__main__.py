"""`python -m jsa_retrieval.cli ...` (as torchrun runs it: `torchrun -m jsa_retrieval.cli train ...`)."""
from . import main

main()
