"""The music domain: requests, the Replicate backend, retries, audio. Knows nothing of Discord."""
