"""Operator mode: the Clara DICOM Parser and Series Selector operators on local folders.

The same functions are what the parser and selector services call on a job's files.
"""
