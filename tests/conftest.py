import os

# Tests never touch the network: make Hugging Face / timm stay offline even if a
# test asks for pretrained weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
