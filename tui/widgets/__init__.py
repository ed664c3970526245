"""Reusable widgets. They render what they are given and never touch a Client or a Source."""
