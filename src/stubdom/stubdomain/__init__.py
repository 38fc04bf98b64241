"""The device-model agent: the stubdomain side of the qemu-trad protocol.

The simulated host boots ``stubdom-dm`` (`main`) as the stubdomain's kernel.  It reads
its setup as Mini-OS does (`args`), brings its PV devices up (`discovery`), drives a
`stubdom.devicemodel.base.DeviceModel` and answers the toolstack's commands
(`commands`, sans-IO; `agent`, the asyncio shell).
"""
