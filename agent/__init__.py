"""alarmgw agent: decides what a field change means and delivers it.

Data flows one way: field (drivers/) -> points -> events -> buffer -> uplink.
Nothing in agent/ speaks to hardware directly; that is drivers/' job.
"""

__version__ = "0.1.0"
