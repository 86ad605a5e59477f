//! flashgate-stm32-uart
