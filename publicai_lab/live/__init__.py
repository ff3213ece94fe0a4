"""The live stack: real vLLM backends, the gateway, emulated backends and the load generator.

Each module here is imported on its own (``from publicai_lab.live.backends import VLLMServer``);
this package imports nothing, so the simulator never pays for the live stack's dependencies.
"""
