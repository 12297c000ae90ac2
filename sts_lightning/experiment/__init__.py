"""The crystal-ball experiment: forecast → fine-tune → realised deltas → does STS predict?"""
