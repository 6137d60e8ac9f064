"""Messaging between workers, servers and stubs: the message type, its wire
frames, and ZeroMQ sockets (inproc://, ipc://, tcp://)."""
