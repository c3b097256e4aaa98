# Where this tree's packages from the Python Package Index download from:
# the index's file server, as Buildroot's own Python packages name it (the
# part of python-setuptools' site before its /packages/ path).
OT2_PYPI_PACKAGES = $(firstword $(subst /packages/, ,$(PYTHON_SETUPTOOLS_SITE)))/packages

include $(sort $(wildcard $(BR2_EXTERNAL_OT2_PATH)/package/*/*.mk))
