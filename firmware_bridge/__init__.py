"""Host side of the ESP32 motor-controller link and the portable firmware core."""
