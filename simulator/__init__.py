"""The simulator: pretends to be the world so the agent can run with no hardware.

Virtual RS-485 lines (pseudo-terminals answering Modbus RTU), Modbus TCP
devices, GPIO contacts reached through a gpiozero pin factory, a scripted
timeline and fault injection; plus a private mosquitto for tests and demos.
It must never be imported by agent/ or drivers/: the agent reaches it only
the way it would reach real hardware.
"""
