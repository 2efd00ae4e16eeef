"""The Discord front: slash commands, progress messages and delivery (discord.py glue)."""
