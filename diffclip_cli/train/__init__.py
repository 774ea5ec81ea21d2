"""Training: masked-diffusion pretraining and few-shot language-driven fine-tuning."""
