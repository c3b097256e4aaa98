include $(sort $(wildcard $(BR2_EXTERNAL_OT2_PATH)/package/*/*.mk))
