"""The parameter service: servers, the stub that routes a process's messages, the in-process server,
worker groups and param slicing."""
