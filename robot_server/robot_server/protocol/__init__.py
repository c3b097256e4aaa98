"""Python protocols for the robot. Their semantics come from the OT-2's own engine, the
``opentrons`` package: ``cli`` holds the ``robot-simulate`` / ``robot-execute`` commands
over it, ``runs`` the server's protocol store and runs."""
