"""jambot: a Discord bot that turns prompts into music made by MusicGen on Replicate."""

__version__ = "0.1.0"
