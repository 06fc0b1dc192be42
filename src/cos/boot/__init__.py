"""Boot chain: GRUB images and config, grubenv."""
