"""llmos serve: an OpenAI-compatible HTTP gateway, a userland program that talks to the kernel only through syscalls."""
