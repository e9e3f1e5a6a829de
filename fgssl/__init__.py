"""FG-SSL: fine-grained self-supervised learning with jigsaw puzzles, in plain PyTorch (no Flower here)."""
