"""The engine: canvas layout, sampler and unmasking policies, round scores, the TIE loop and its events.

Pure computation on tensors. It speaks to models through `process.Forward` requests that a driver
(runtime/) answers, and it imports nothing from runtime, tasks or faces.
"""
