"""What the owner sees of a running bot: metrics, the health endpoint, `jambot check`.

`metrics` is a leaf that the other layers report to (it imports none of them), so the
Replicate adapter and the scheduler can count what they do without the dependencies between
`chat`, `jobs` and `music` turning around. The rest of this package sits on top of those
three: the health check reads the bot's services, and only the process's outer layers (the
bot's `setup_hook`, the runner, the CLI) start the server or run the check.
"""
