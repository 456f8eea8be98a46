"""From raw files to training data: conversion, series order, lesion crops, slice labels, dataset layouts, near-duplicate grouping and splitting."""
