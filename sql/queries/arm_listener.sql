-- Before waiting: the next insert into the queue notifies (false while an insert is mid-commit).
select private.arm_outbound_listener() as armed
