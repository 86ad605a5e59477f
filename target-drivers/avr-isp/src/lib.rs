//! flashgate-avr-isp
