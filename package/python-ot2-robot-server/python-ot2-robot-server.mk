################################################################################
#
# python-ot2-robot-server
#
################################################################################

# Built from this tree's own robot_server/ directory (a pyproject.toml
# project with the setuptools backend).
PYTHON_OT2_ROBOT_SERVER_SITE = $(BR2_EXTERNAL_OT2_PATH)/robot_server
PYTHON_OT2_ROBOT_SERVER_SITE_METHOD = local
PYTHON_OT2_ROBOT_SERVER_SETUP_TYPE = setuptools
PYTHON_OT2_ROBOT_SERVER_LICENSE = Apache-2.0

$(eval $(python-package))
