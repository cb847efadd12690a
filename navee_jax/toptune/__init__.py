"""Top-tuning: a frozen backbone embeds the training images once (cached on disk), a small head trains on them."""
