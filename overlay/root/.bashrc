# bash reads this for interactive shells and for commands run over SSH without a login
# shell (`ssh root@robot 'nohup python /data/p.py'`): both get the robot's environment,
# as login shells do.
. /etc/profile.d/ot2-environment.sh
