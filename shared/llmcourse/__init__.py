"""llmcourse: the helper package of the open LLM course."""
__version__ = "0.1.0"
