################################################################################
#
# python-ot2-update-server
#
################################################################################

# Built from this tree's own update_server/ directory (a pyproject.toml
# project with the setuptools backend).
PYTHON_OT2_UPDATE_SERVER_SITE = $(BR2_EXTERNAL_OT2_PATH)/update_server
PYTHON_OT2_UPDATE_SERVER_SITE_METHOD = local
PYTHON_OT2_UPDATE_SERVER_SETUP_TYPE = setuptools
PYTHON_OT2_UPDATE_SERVER_LICENSE = Apache-2.0

$(eval $(python-package))
