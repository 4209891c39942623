"""The ROS 2 runtime: the encoder and decoder nodes (thin shells over ``pcic_ros.codec``), message
conversions, the TF buffer, scan/image pairing, rate control, memory release and the launch runner."""
