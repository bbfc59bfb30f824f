"""Example function 3: apply an alarm rule to the detections and record the outcome."""
