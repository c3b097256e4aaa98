# Login shells (and, through /root/.bashrc, SSH commands) get the robot's environment
# (/etc/ot2/environment) and the commands of packages installed with pip into /data.
set -a
. /etc/ot2/environment
set +a
case ":$PATH:" in
*":$PYTHONUSERBASE/bin:"*) ;;
*) PATH=$PATH:$PYTHONUSERBASE/bin ;;
esac
# Packages installed in /data for another Python version, found at boot (ot2-python-packages).
if [ -n "${PS1:-}" ] && [ -s /run/ot2/python-packages.txt ]; then
	cat /run/ot2/python-packages.txt >&2
fi
