"""kandi"""
