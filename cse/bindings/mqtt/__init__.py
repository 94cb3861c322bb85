"""The MQTT binding (TS-0010): a persistent broker session serving this CSE, and clients."""

from cse.bindings.mqtt.client import MqttClient, MqttClientError, MqttSender
from cse.bindings.mqtt.server import MqttBinding, answer
from cse.bindings.mqtt.settings import MqttSettings

__all__ = ["MqttBinding", "MqttClient", "MqttClientError", "MqttSender", "MqttSettings", "answer"]
