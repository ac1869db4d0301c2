"""Field drivers: everything that speaks to hardware lives here and nowhere else.

Modbus RTU/TCP lines (drivers/modbus.py over pyserial and asyncio; pymodbus's
PDU codec wrapped in drivers/modbus_frames.py), device profiles as data
(drivers/profile.py, declared in drivers/profile_schema.py), pure decoding of register blocks
(drivers/codec.py), request planning (drivers/plan.py) and GPIO contacts and
outputs (gpiozero, wrapped in drivers/gpio.py). Drivers hand the agent plain
typed values; they never decide what an alarm is and never publish anything.
"""
