"""Code that runs inside Triton: `model.py`, the Python-backend model `nexus sync` copies into every version
folder. It imports nothing of ours: in Triton's container only torch, numpy and Triton's utilities are there."""
