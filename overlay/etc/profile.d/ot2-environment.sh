# Login shells get the robot's environment (/etc/ot2/environment).
set -a
. /etc/ot2/environment
set +a
